"""The local lab: the whole fleet story on one machine, in Linux network namespaces."""
