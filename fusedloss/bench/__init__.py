"""The benchmarks behind ``python -m fusedloss bench`` and ``make demo`` (``demo``): each loss's entries
(``registry``, ``cases_<family>``, ``inputs``) timed against torch eager, torch.compile and the installed peers
on a GPU (``harness``, ``peers``), and what a CPU can measure: the eager fallback's overhead
(``--cpu-fallback``), traffic through Triton's interpreter (``traffic``), host time per call (``host``);
``report`` makes the tables and plots."""
