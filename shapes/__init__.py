"""vidpost.shapes"""
