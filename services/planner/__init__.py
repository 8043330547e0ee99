"""The planner: turns a submitted task into a validated plan (agents + step DAG)."""
