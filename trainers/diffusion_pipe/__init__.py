"""The diffusion-pipe backend: supervises the user's own diffusion-pipe checkout as a separate process.

diffusion-pipe is GPL-3.0; dp-studio never imports or copies its code. It only writes TOML files, launches
``deepspeed train.py`` with cwd = the checkout, reads its console output and files, and touches the signal files it
honours. Modules: ``install`` (locate + health), ``launch`` (command, environment, launch copy of the configs),
``parse`` (console lines -> events), ``supervise`` (the child process), ``discover`` (run folders, adoption).
Everything here is torch-free.
"""
