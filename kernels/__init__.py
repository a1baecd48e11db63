"""vidpost.kernels"""
