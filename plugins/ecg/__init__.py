"""vrtk plugin: ecg."""
