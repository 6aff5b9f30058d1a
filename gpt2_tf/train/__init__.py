"""Training: the trainer, the optimizer and schedules, tf.distribute set-up, the monitor."""
