"""Lightning training: the configs, the one runner, checkpoint IO and the four trainers."""
