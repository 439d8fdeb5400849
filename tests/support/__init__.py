"""Helpers shared by the test modules (no test module imports another; fixtures stay in
the conftest.py files, which import from here):

paths       where things are in the repository
pictures    real photos and synthetic JPEGs
faces       pictures with faces at known places
media       tiny videos and animations made on the fly
serve       the test application on a local Ray: config, deploy, wait, kill replicas
http        raw-socket hang-ups, server-sent events
jobs        waiting for a job over HTTP
pages       the upload page in Chromium, and the application of the job pages
ray_cluster, fake_cluster   real `ray start` clusters on this machine
nginx_edge  the shipped nginx edge, rendered and run
redis_server  a real Redis on loopback
pillow_corpus  Pillow's own test images
weights     checkpoint files
"""
