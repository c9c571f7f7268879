"""Input and output: FCS reading and writing, manifests, outcome tables, atomic writes."""
