"""Fleet lifecycle ("Grim Reaper"): the canary finds blocked nodes, the reaper replaces them."""
