"""lunghelpers: helpers for the 2D lung segmentation notebooks."""
