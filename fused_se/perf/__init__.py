"""Performance without a GPU: bytes counted through the Triton interpreter and replayed
through a model of a card's L2 (traffic), host overhead per call (host), and the compiled
kernels' registers, spills and access widths (kernel_report). Every time here is a model."""
