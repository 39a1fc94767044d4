"""Files: the safe .npz container (:mod:`.npzfile`), the model file format
(:mod:`.spec`: architecture document + arrays), training checkpoints
(:mod:`.checkpoint`) and atomic writes (:mod:`.atomic`). Knows layers, arrays
and specs, not the trainable model class (that is :mod:`gpuconv.models`)."""
from .atomic import atomic_write, atomic_write_text
from .checkpoint import Checkpoint, load_checkpoint, restore_model, save_checkpoint
from .spec import layer_spec, model_arrays, model_spec, save_model

__all__ = ["atomic_write", "atomic_write_text", "Checkpoint", "load_checkpoint",
           "restore_model", "save_checkpoint", "layer_spec", "model_arrays", "model_spec",
           "save_model"]
