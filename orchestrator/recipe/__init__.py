"""Everything that runs inside one trial: train_func, its checkpoints, accelerator, prediction pass, logs."""
