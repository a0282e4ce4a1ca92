"""Hardware targets: profiles (profiles.py), the budget model (resources.py), the partitioner
(partition.py) and the checker (checker.py); backends live in per-chip subpackages (loihi2/)."""
