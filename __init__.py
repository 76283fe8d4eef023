"""crmscore: an open scoring service for CRM.

Four models (churn, propensity, credit risk, expected margin) over point-in-time
feature snapshots, and Buttle's customer portfolio matrix on top of them.
The code lives in three subpackages: ``crmscore.features``, ``crmscore.training``
and ``crmscore.serving``; ``crmscore.cli`` composes them into one command.
"""

__version__ = "0.1.0"
