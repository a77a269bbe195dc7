"""Where numbers go: metric sinks, the TensorBoard event file, the dashboard layout, and the
optional parameter statistics (histograms, update-to-weight ratios)."""
