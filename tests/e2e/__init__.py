"""Whole-product scenarios in namespace VMs; artifacts.py builds the install package they use."""
