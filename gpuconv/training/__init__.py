"""The training loop (:mod:`.loop`: fit/evaluate/predict), its callbacks, progress
display, batch iteration over arrays, per-epoch statistics, train/eval modes
and the layer summary table. The trainable model class that calls it is
:class:`gpuconv.models.Sequential`."""
