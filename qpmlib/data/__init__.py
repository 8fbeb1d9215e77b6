"""Datasets: SynthBirds (generated, CUB format), CUB-200-2011 and Stanford Cars, and image preprocessing."""
