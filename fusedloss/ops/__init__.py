"""The ops under fusedloss.functional: one shared scaffold and one module per kernel family.

``_scaffold`` runs every family's forward and backward the same way: one ``torch.autograd.Function``
shared by every family for eager calls (another for the torch.func transforms), and a
``torch.library.custom_op`` pair registered per family for torch.compile; it also imports each family's
Triton kernels lazily (``lazy_kernels``). Each family module (``softmax_rows``, ``distribution_rows``,
``pointwise``, ``row_margin``, and the matmul rows' ``linear_cross_entropy`` and ``linear_distribution``)
holds its family object (launches, saved tensors, reference), its options and its "supported?" predicate.
Beside them: ``_chunks`` (the matmul rows' chunk driver), ``_vocab_parallel`` (the shard layout and
collectives of a process_group call), ``_eager`` (eager torch formulas: the torch backend's extras and the
fused ops' differentiable reference).
"""
