"""vidpost.pipelines"""
