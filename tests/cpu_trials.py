"""`python tests/cpu_trials.py search ...`: autotrick's command line with every trial training on
the CPU, whatever GPU share Ray schedules it by. With a Ray head of its own that has a logical GPU
(`ray start --num-gpus=1` on a machine without one), this checks the GPU scheduling on the CPU.

Why a launcher: the trials' device is settled once, in the driver (SearchOptions.with_gpus through
search_options.trial_device), and travels to Ray's workers inside the trials' TrainConfig; so
replacing that one function in the driver process covers every trial, and the production code
carries no test switch. A pytest fixture cannot reach the CLI's own process, hence this script.
"""

import autotrick.search_options
from autotrick.cli import run


def _on_the_cpu(gpus_per_trial: float) -> str:
    return "cpu"


autotrick.search_options.trial_device = _on_the_cpu

if __name__ == "__main__":
    run()
