"""vidpost.rl"""
