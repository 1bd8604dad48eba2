/** This SDK's version, and how it names itself in its hello (the server shows it in the
 * members' sync health). Kept equal to package.json's version by a test. */
export const SDK_VERSION = "0.1.0";
export const CLIENT_VERSION = `fieldsync-client-typescript/${SDK_VERSION}`;
