// Types of what scripts/ensure-deps.mjs exports (plain JavaScript: it must run on old Nodes), for its tests.
export declare const PINNED_NODE: string;
export declare function engineMinimum(range: string): [number, number, number];
export declare function satisfies(version: string, minimum: readonly [number, number, number]): boolean;
export declare function whyInstall(dir?: string): string | undefined;
export declare function engineWarningFilter(packageName: string, write: (s: string) => void): { push(chunk: string): void; end(): void };
