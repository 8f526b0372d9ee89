"""Tools that score and inspect predictions: Table-3 metrics (`unisegdiff evaluate`), reports, uncertainty maps."""
