"""Features: the data contract, validation, generators and point-in-time snapshots."""
