"""From robot recordings to a deployable model in one command (`python -m training run --bags ...`).

    survey.py       what each rosbag2 holds (topics, types, encodings) and which topics to train on
    checks.py       the one-line refusals of unusable recordings, before anything is written
    time_split.py   train / val / test by time: whole recordings, or long stretches with a guard between them
    plan.py         the run's configuration (written by `init`, read back by `run --config`)
    photometric.py  photometric error per stage on a held-out split (evaluation without ground truth)
    bag_run.py      the command: plan, import (cached), stages, evaluation, report, deployment commands
"""


class RecordingError(ValueError):
    """A recording that cannot be trained on as given; one line naming the problem and the fix."""
