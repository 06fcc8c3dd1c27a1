"""The application around the library: training runs and checkpoints (``train``), the command
line (``cli``), benchmarks (``bench``), the paper's experiments (``reproduce``), figures
(``plots``) and thread settings for shared machines (``runtime``).

The library (``nemon`` and its other modules) never imports from here.
"""
