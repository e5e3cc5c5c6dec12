"""End-to-end tests: the command line and whole daemon processes (several, for the cluster and the
nemesis), with the lab simulator as a process."""
