"""MT-SNN processes and their CPU models for Lava (processes and models only; see process.py)."""
