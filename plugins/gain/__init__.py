"""vrtk plugin: gain."""
