"""One file per architecture. `load_model(path)` picks the class named by `general.architecture`."""
