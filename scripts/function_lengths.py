"""The longest functions of a folder, in lines of code without their docstrings (then with):
the figure docs/architecture.md reports for the restructuring of issue 23.

    .venv/bin/python scripts/function_lengths.py iegkit 8
"""
import ast, pathlib, sys
rows = []
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.py")):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            total = node.end_lineno - node.lineno + 1
            doc = 0
            if node.body and isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant):
                doc = node.body[0].end_lineno - node.body[0].lineno + 1
            rows.append((total - doc, total, f"{path}:{node.name}"))
rows.sort(reverse=True)
for r in rows[: int(sys.argv[2]) if len(sys.argv) > 2 else 8]:
    print(*r)
