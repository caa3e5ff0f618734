"""Fused seeds: several seeds of one run trained together in one Trainer."""
