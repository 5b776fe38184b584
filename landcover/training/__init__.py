"""Fine-tuning with accelerate: the loop, checkpoints and resume, writing the model folder, its plots."""
