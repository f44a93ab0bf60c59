"""The plugins shipped with vrtk; each registers through the `vrtk` entry-point group."""
