"""How trials run: the worker loop, trial child processes, signals, CPU-thread limits, library quieting."""
