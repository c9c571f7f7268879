"""Gates: geometry (membership of events), automatic placement, strategies, interop."""
