class CheckpointError(ValueError):
    """A checkpoint cannot be used as given. The message names the file, the problem and the fix."""
