"""Official checkpoints: strict loading, random checkpoints in the official layout, CPU precision modes."""
