"""vrtk plugin: bm."""
