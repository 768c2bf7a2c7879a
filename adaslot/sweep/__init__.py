"""`adaslot sweep`: many training runs over one feature store, compared (runner.py).

plan.py decides what each variant needs and which variants share an input; worker.py trains a group of runs
in lockstep on one input and scores them; results.py and plots.py turn run folders into sweep.csv,
summary.md, curves.png and effects.png.
"""

from adaslot.sweep.runner import collect, run_sweep, write_results

__all__ = ["collect", "run_sweep", "write_results"]
