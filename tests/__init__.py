"""The test suite: unit/ mirrors the packages (one file per module), integration/ holds the
end-to-end tests (training runs, subprocess CLIs, several processes, servers, Slurm, docs).
A package, so that test files of the same name in different folders do not collide."""
