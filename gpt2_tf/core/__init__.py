"""What every layer may use: the machine (hardware), the hub, file locks, the run folder's layout,
compiled model functions, report files, and the one door to private Keras internals (compat)."""
