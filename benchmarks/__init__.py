"""The scripts behind every figure of docs/results.md, as a package: run each from the
repository root as ``python -m benchmarks.<name>`` (``benchmarks/README.md``). They import each
other (``results_io``, the shared store and report helpers; ``noisy_cifar10``, the CIFAR-10
protocols and run store) as ``benchmarks.<module>``, with no edit of ``sys.path``."""
