"""Loihi 2 target: design rules, mapping, the Lava backend, NetX export."""
