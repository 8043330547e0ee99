"""Engine backends; each is imported only when the settings choose it."""
