"""The dispatcher: the run state machine."""
