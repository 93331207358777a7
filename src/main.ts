#!/usr/bin/env node
// ferry's entry point.
import { main } from './cli/main.ts';

const code = await main();
process.exitCode = code;
