"""Stage: training. ``train`` runs the loop and returns the trained model; ``save_run`` writes it out."""

from heed.train.loop import LoopState, Trained, TrainResult, evaluate, train, train_step
from heed.train.save import save_run

__all__ = ["LoopState", "Trained", "TrainResult", "evaluate", "save_run", "train", "train_step"]
