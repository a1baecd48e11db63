"""vidpost.rewards"""
